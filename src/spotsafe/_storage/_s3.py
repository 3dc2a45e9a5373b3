"""S3 settings from where users keep them, and the two S3 requests obstore does not make.

:func:`settings` turns ``storage_options`` (obstore's names or s3fs's, so that existing
options keep working) and the environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, the shared
credentials and config files with ``AWS_PROFILE``) into obstore's configuration, with
spotsafe's timeouts. Where none of these hold credentials, obstore's own chain asks the
web identity, the container's and the instance's role.

:class:`S3Admin` lists and aborts the multipart uploads a killed writer left behind, which
obstore (it aborts its own failed uploads) has no call for: two bodiless requests signed
here (AWS Signature Version 4) with the static credentials found by :func:`settings`.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import RemoteAccessError, RemoteUnavailableError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection
READ_TIMEOUT = 5.0  # seconds of silence allowed while an answer is read
# Longest one request may take, body included (a server that stops reading it): a 16 MiB
# part at 140 KB/s.
REQUEST_TIMEOUT = 120.0
REQUEST_ATTEMPTS = 2  # tries of one request, the first included

CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials, or "
                    "run on a machine with an instance role), or pass storage_options={'key': ..., 'secret': ...}, "
                    "or {'anon': True} for a public bucket")
# s3fs's spellings of the same settings, accepted so that existing storage_options keep working.
_S3FS_NAMES = {"endpoint_url": "endpoint", "key": "access_key_id", "secret": "secret_access_key",
               "token": "session_token", "anon": "skip_signature"}
_ROLE_ENV = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str = ""
    token: str | None = None

    def __repr__(self) -> str:  # never the secret
        return "Credentials(...)"


@dataclass(frozen=True)
class Settings:
    bucket: str
    endpoint: str | None  # None: AWS itself
    region: str
    virtual_hosted: bool
    credentials: Credentials | None  # static ones we found; None: obstore's chain, or anonymous
    anonymous: bool

    def __repr__(self) -> str:
        return f"_Settings({self.bucket!r}, {self.endpoint!r}, {self.region!r})"


def _profile_file(path_env: str, default: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(os.path.expanduser(os.environ.get(path_env) or default))
    except (configparser.Error, OSError, UnicodeDecodeError):
        logger.debug("Could not read %s", os.environ.get(path_env) or default, exc_info=True)
    return parser


def settings(url: str, bucket: str, options: dict[str, Any]) -> tuple[Settings, dict, dict, dict]:
    """(settings, obstore config, client options, retry config) from ``options`` and the environment."""
    options = dict(options)
    config: dict[str, Any] = {}
    client: dict[str, Any] = {"connect_timeout": timedelta(seconds=CONNECT_TIMEOUT),
                              "read_timeout": timedelta(seconds=READ_TIMEOUT),
                              "timeout": timedelta(seconds=REQUEST_TIMEOUT)}
    client.update(options.pop("client_options", None) or {})
    retry: dict[str, Any] = {"max_retries": REQUEST_ATTEMPTS - 1}
    retry.update(options.pop("retry_config", None) or {})
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    if "region_name" in client_kwargs:
        options.setdefault("region", client_kwargs.pop("region_name"))
    if "endpoint_url" in client_kwargs:
        options.setdefault("endpoint", client_kwargs.pop("endpoint_url"))
    for name, seconds in dict(options.pop("config_kwargs", None) or {}).items():  # botocore's Config
        if name in ("connect_timeout", "read_timeout"):
            client[name] = timedelta(seconds=float(seconds))
        elif name == "retries":
            tries = seconds.get("total_max_attempts", seconds.get("max_attempts"))
            if tries is not None:
                retry["max_retries"] = max(0, int(tries) - 1)
        else:
            raise ValueError(f"storage_options config_kwargs {name!r} is not understood for {url}; use "
                             "client_options (obstore's ClientConfig) instead.")
    for old, new in _S3FS_NAMES.items():
        if old in options:
            options.setdefault(new, options.pop(old))
            options.pop(old, None)
    endpoint = (options.pop("endpoint", None) or options.pop("aws_endpoint_url_s3", None)
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None)
    profile = os.environ.get("AWS_PROFILE") or "default"
    region = (options.pop("region", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or _profile_file("AWS_CONFIG_FILE", "~/.aws/config").get(
                  "default" if profile == "default" else f"profile {profile}", "region", fallback=None)
              or "us-east-1")
    anonymous = bool(options.get("skip_signature"))
    key = options.pop("access_key_id", None)
    secret = options.pop("secret_access_key", None)
    token = options.pop("session_token", None)
    credentials = None
    if key and secret:
        credentials = Credentials(key, secret, token)
    elif not anonymous and os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                                   os.environ.get("AWS_SESSION_TOKEN") or None)
    elif not anonymous:
        shared = _profile_file("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        if shared.get(profile, "aws_access_key_id", fallback=None):
            credentials = Credentials(shared.get(profile, "aws_access_key_id"),
                                       shared.get(profile, "aws_secret_access_key", fallback=""),
                                       shared.get(profile, "aws_session_token", fallback=None))
        elif (os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
              and not any(os.environ.get(v) for v in _ROLE_ENV)):
            raise RemoteAccessError(f"No AWS credentials found for {url}; {CREDENTIALS_HINT}.")
    if credentials is not None:
        config.update(access_key_id=credentials.key, secret_access_key=credentials.secret)
        if credentials.token:
            config["token"] = credentials.token
    if endpoint:
        config["endpoint"] = endpoint
        config.setdefault("virtual_hosted_style_request", False)
        if endpoint.startswith("http://"):
            client.setdefault("allow_http", True)
    config["region"] = region
    config.update(options)  # any other obstore S3 setting, checked by obstore itself
    virtual = bool(config.get("virtual_hosted_style_request", endpoint is None))
    return (Settings(bucket, endpoint, region, virtual, credentials, anonymous), config, client, retry)


class S3Admin:
    """ListMultipartUploads and AbortMultipartUpload, signed here (AWS Signature Version 4)."""

    _PAGES = 20  # at most 20 x 1000 uploads listed per call

    def __init__(self, settings: Settings, url: str) -> None:
        self.s = settings
        self.url = url
        if settings.endpoint is None:
            self._base = f"https://{settings.bucket}.s3.{settings.region}.amazonaws.com"
        elif settings.virtual_hosted:
            scheme, _, host = settings.endpoint.partition("://")
            self._base = f"{scheme}://{settings.bucket}.{host.rstrip('/')}"
        else:
            self._base = f"{settings.endpoint.rstrip('/')}/{settings.bucket}"

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every incomplete multipart upload under ``prefix``."""
        out: list[tuple[str, str]] = []
        markers: dict[str, str] = {}
        for _ in range(self._PAGES):
            root = ET.fromstring(self._request("GET", "", {"uploads": "", "prefix": prefix, **markers}))
            for up in root.iter():
                if up.tag.rsplit("}", 1)[-1] == "Upload":
                    fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in up}
                    out.append((fields.get("Key", ""), fields.get("UploadId", "")))
            fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in root}
            if fields.get("IsTruncated", "false").lower() != "true":
                break
            markers = {"key-marker": fields.get("NextKeyMarker", ""),
                       "upload-id-marker": fields.get("NextUploadIdMarker", "")}
        return out

    def abort(self, key: str, upload_id: str) -> None:
        self._request("DELETE", key, {"uploadId": upload_id})

    def _request(self, method: str, key: str, query: dict[str, str]) -> bytes:
        base = urllib.parse.urlsplit(self._base)
        path = urllib.parse.quote(f"{base.path}/{key}" if key else base.path or "/", safe="/-_.~")
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                      for k, v in sorted(query.items()))
        headers = _sigv4(method, base.netloc, path, qs, self.s.region, self.s.credentials)
        request = urllib.request.Request(f"{base.scheme}://{base.netloc}{path}?{qs}", method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT + READ_TIMEOUT) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise RemoteAccessError(f"{self.url} refused access (HTTP {e.code} listing incomplete uploads); "
                                        f"check the credentials: {CREDENTIALS_HINT}.") from None
            raise
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise RemoteUnavailableError(f"{self.url} did not answer ({getattr(e, 'reason', e)}); check the endpoint "
                                         "(AWS_ENDPOINT_URL for S3) and the network, then retry.") from None


def _sigv4(method: str, host: str, path: str, query: str, region: str, creds: Credentials | None,
           now: datetime | None = None) -> dict[str, str]:
    """The headers that sign a bodiless S3 request (AWS Signature Version 4)."""
    assert creds is not None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    names = ";".join(sorted(headers))
    canonical = "\n".join([method, path, query, "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), names,
                           payload])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret).encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.key}/{scope}, SignedHeaders={names}, "
                                f"Signature={signature}")
    return headers
