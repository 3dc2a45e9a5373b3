"""S3 settings from where users keep them, and the clean-up obstore has no call for.

:func:`settings` turns ``storage_options`` (obstore's names or s3fs's, so that existing
options keep working) and the environment into obstore's configuration, with spotsafe's
timeouts. Credentials, in this order:

1. keys in ``storage_options``, or ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
   ``AWS_SESSION_TOKEN``: given to obstore as they are;
2. with boto3 installed, a boto3 session (``AWS_PROFILE``, or ``storage_options['profile']``)
   through obstore's ``Boto3CredentialProvider``: botocore's whole chain (profiles, SSO,
   assume-role, ``credential_process``, web identity, the container's and the instance's
   role), refreshed as they expire;
3. without boto3, obstore's own chain (web identity, the container's and the instance's role).

The region is ``storage_options``', else the boto3 session's (``AWS_DEFAULT_REGION``, the
profile's), else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else obstore's default.

:class:`S3Admin` lists and aborts the multipart uploads a killed writer left behind (obstore
aborts its own failed uploads, but cannot list what a dead process left): a boto3 client on
the same session, endpoint, region and timeouts. Without boto3 that clean-up is skipped
and a bucket lifecycle rule (``AbortIncompleteMultipartUpload``) does it instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import MissingDependencyError, RemoteAccessError, RemoteUnavailableError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection
READ_TIMEOUT = 5.0  # seconds of silence allowed while an answer is read
# Longest one request may take, body included (a server that stops reading it): a 16 MiB
# part at 140 KB/s.
REQUEST_TIMEOUT = 120.0
REQUEST_ATTEMPTS = 2  # tries of one request, the first included

CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with boto3 installed, or "
                    "run on a machine with an instance role), or pass storage_options={'key': ..., 'secret': ...}, "
                    "or {'anon': True} for a public bucket")
LIFECYCLE_HINT = ("a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them, or `pip install boto3` "
                  "lets spotsafe abort them")
# s3fs's spellings of the same settings, accepted so that existing storage_options keep working.
_S3FS_NAMES = {"endpoint_url": "endpoint", "key": "access_key_id", "secret": "secret_access_key",
               "token": "session_token", "anon": "skip_signature"}
_ROLE_ENV = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@dataclass(frozen=True)
class Settings:
    bucket: str
    endpoint: str | None  # None: AWS itself
    region: str | None  # None: obstore's default
    virtual_hosted: bool
    anonymous: bool
    session: Any  # the boto3 Session the credentials come from; None without boto3 or when anonymous
    connect_timeout: float
    read_timeout: float
    attempts: int

    def __repr__(self) -> str:  # never the session's credentials
        return f"_Settings({self.bucket!r}, {self.endpoint!r}, {self.region!r})"


def _boto3() -> Any:
    """The boto3 module, or None when it is not installed."""
    try:
        import boto3
    except ImportError:
        return None
    return boto3


def _seconds(value: Any, default: float) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value) if isinstance(value, (int, float)) else default


def settings(url: str, bucket: str, options: dict[str, Any]) -> tuple[Settings, dict, dict, dict, Any]:
    """(settings, obstore config, client options, retry config, credential provider or None)
    from ``options`` and the environment."""
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
    profile = options.pop("profile", None)
    anonymous = bool(options.get("skip_signature"))
    static = (options.pop("access_key_id", None), options.pop("secret_access_key", None),
              options.pop("session_token", None))
    if not (static[0] and static[1]) and not anonymous and os.environ.get("AWS_ACCESS_KEY_ID") and \
            os.environ.get("AWS_SECRET_ACCESS_KEY"):
        static = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                  os.environ.get("AWS_SESSION_TOKEN") or None)
    has_static = bool(static[0] and static[1])
    boto3 = None if anonymous else _boto3()
    session, provider, session_region = None, None, None
    if boto3 is not None:
        session, provider, session_region = _session(boto3, url, profile, static if has_static else None)
    elif not anonymous and not has_static and (profile or os.environ.get("AWS_PROFILE")):
        raise MissingDependencyError(f"The AWS profile {profile or os.environ['AWS_PROFILE']!r} for {url} is read "
                                     "through boto3, which is not installed; run `pip install boto3`, or export "
                                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
    elif (not anonymous and not has_static and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
          and not any(os.environ.get(v) for v in _ROLE_ENV)):
        raise RemoteAccessError(f"No AWS credentials found for {url}; {CREDENTIALS_HINT}.")
    if has_static:
        config.update(access_key_id=static[0], secret_access_key=static[1])
        if static[2]:
            config["token"] = static[2]
    if endpoint:
        config["endpoint"] = endpoint
        config.setdefault("virtual_hosted_style_request", False)
        if endpoint.startswith("http://"):
            client.setdefault("allow_http", True)
    region = (options.pop("region", None) or session_region
              or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None)
    if region:
        config["region"] = region
    config.update(options)  # any other obstore S3 setting, checked by obstore itself
    virtual = bool(config.get("virtual_hosted_style_request", endpoint is None))
    s = Settings(bucket, endpoint, region, virtual, anonymous, session,
                 _seconds(client.get("connect_timeout"), CONNECT_TIMEOUT),
                 _seconds(client.get("read_timeout"), READ_TIMEOUT), int(retry.get("max_retries", 1)) + 1)
    return s, config, client, retry, provider


def _session(boto3: Any, url: str, profile: str | None,
             static: tuple[str, str, str | None] | None) -> tuple[Any, Any, str | None]:
    """(boto3 session, obstore credential provider or None where the static keys go to obstore's
    config, the session's region)."""
    import botocore.exceptions

    try:
        if static is not None:
            session = boto3.Session(aws_access_key_id=static[0], aws_secret_access_key=static[1],
                                    aws_session_token=static[2], profile_name=profile)
            return session, None, session.region_name
        session = boto3.Session(profile_name=profile)
        if session.get_credentials() is None:
            raise RemoteAccessError(f"No AWS credentials found for {url}; {CREDENTIALS_HINT}.")
        from obstore.auth.boto3 import Boto3CredentialProvider

        return session, Boto3CredentialProvider(session), session.region_name
    except botocore.exceptions.ProfileNotFound as e:
        raise RemoteAccessError(f"{url}: {e}; set AWS_PROFILE to a profile in ~/.aws/config, or export "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.") from None
    except botocore.exceptions.BotoCoreError as e:  # an SSO login that expired, a failing credential_process
        raise RemoteAccessError(f"No usable AWS credentials for {url} ({e}); {CREDENTIALS_HINT}.") from None


class S3Admin:
    """ListMultipartUploads and AbortMultipartUpload through boto3 (obstore has no call for them).

    Built only where :attr:`Settings.session` is a boto3 session: the client uses its
    credentials, the store's endpoint, region and addressing style, and spotsafe's timeouts.
    """

    _MAX_UPLOADS = 20_000  # at most this many listed per call

    def __init__(self, settings: Settings, url: str) -> None:
        from botocore.config import Config

        self.url = url
        self.bucket = settings.bucket
        self._client = settings.session.client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region,
            config=Config(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                          retries={"total_max_attempts": settings.attempts, "mode": "standard"},
                          s3={"addressing_style": "virtual" if settings.virtual_hosted else "path"}))

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every incomplete multipart upload under ``prefix``."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"MaxItems": self._MAX_UPLOADS})
        with self._errors("listing incomplete uploads"):
            return [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads") or []]

    def abort(self, key: str, upload_id: str) -> None:
        with self._errors("aborting an incomplete upload"):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """botocore's errors as spotsafe's, in one sentence naming the URL."""
        import botocore.exceptions as e

        try:
            yield
        except e.ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (401, 403):
                code = err.response.get("Error", {}).get("Code", "")
                raise RemoteAccessError(f"{self.url} refused access (HTTP {status} {code} {doing}); check the "
                                        f"credentials: {CREDENTIALS_HINT}.".replace("  ", " ")) from None
            raise
        except (e.ConnectionError, e.HTTPClientError) as err:
            raise RemoteUnavailableError(f"{self.url} did not answer ({err}); check the endpoint (AWS_ENDPOINT_URL "
                                         "for S3) and the network, then retry.") from None
        except e.BotoCoreError as err:  # credentials that expired and could not be refreshed, ...
            raise RemoteAccessError(f"No usable AWS credentials for {self.url} ({err}); {CREDENTIALS_HINT}.") \
                from None
