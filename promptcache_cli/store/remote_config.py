"""Where the remote store is and how `pc` signs in: the ``s3://bucket/prefix`` URL, $PC_REMOTE,
$PC_REMOTE_TIMEOUT, and the endpoint, region and credentials from the standard AWS variables and
files (:func:`aws_settings`), so the same settings work against AWS S3, SeaweedFS, Ceph RGW,
Cloudflare R2 or GCS's S3 API. Reads files and variables only; contacts nothing."""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import UsageError

ENV_REMOTE = "PC_REMOTE"
ENV_TIMEOUT = "PC_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 3.0  # seconds to connect, and the longest pause while a response is read

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,62}")  # S3's rule, plus '_' some stores allow
SEGMENT_RE = re.compile(r"[A-Za-z0-9!\-_.*'()=+,]+")  # object key characters safe everywhere


@dataclass(frozen=True)
class RemoteUrl:
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at either end)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel


def parse_url(url: str) -> RemoteUrl:
    """``s3://bucket`` or ``s3://bucket/prefix``; anything else is a UsageError (one line, which
    repeats only the parts a URL of ours may have: never a user name or password)."""
    text = url.strip()
    if not text.lower().startswith("s3://"):
        raise UsageError("--remote takes an s3://bucket/prefix URL (the endpoint comes from AWS_ENDPOINT_URL; "
                         "see docs/fleet.md)")
    rest = text[5:]
    if any(c in rest for c in "@?#\\") or any(ord(c) < 33 for c in rest):
        raise UsageError("--remote URL: give s3://bucket/prefix only; credentials and the endpoint come from the "
                         "AWS variables and files (see docs/fleet.md)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise UsageError(f"--remote URL: '{bucket[:64]}' is not a bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or not SEGMENT_RE.fullmatch(p) for p in parts) or len(prefix) > 512:
        raise UsageError("--remote URL: its prefix may hold letters, digits and !-_.*'()=+, between slashes")
    return RemoteUrl(bucket, "/".join(parts))


def remote_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """$PC_REMOTE, None when unset or empty."""
    value = (os.environ if env is None else env).get(ENV_REMOTE, "").strip()
    return value or None


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise UsageError(f"{ENV_TIMEOUT} must be a number of seconds above 0, not '{raw[:32]}'")
    return value


@dataclass(frozen=True)
class AwsSettings:
    """What the standard AWS variables and files say: environment variables first
    (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the profile ($AWS_PROFILE, else ``default``)
    in the credentials file ($AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials) and the
    config file ($AWS_CONFIG_FILE, else ~/.aws/config: ``region``, ``endpoint_url``). Anything
    still missing is left to the client's own chain (web identity, container and instance
    credentials)."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


def _profile_files(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(credentials, config) entries of the profile in use; empty where a file is absent or unreadable."""
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path(env.get("HOME") or Path.home())
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials").expanduser()
    config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()

    def section(path: Path, names: list[str]) -> dict[str, str]:
        parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, UnicodeDecodeError, configparser.Error):
            return {}
        for name in names:
            if parser.has_section(name):
                return {k.lower(): v.strip() for k, v in parser.items(name)}
        return {}

    config_names = ["default"] if profile == "default" else [f"profile {profile}", profile]
    return section(creds_file, [profile]), section(config_file, config_names)


def aws_settings(env: Mapping[str, str] | None = None) -> AwsSettings:
    env = os.environ if env is None else env
    creds, config = _profile_files(env)

    def first(*values: str | None) -> str | None:
        return next((v.strip() for v in values if v and v.strip()), None)

    key_id = first(env.get("AWS_ACCESS_KEY_ID"))
    secret = first(env.get("AWS_SECRET_ACCESS_KEY"))
    token = first(env.get("AWS_SESSION_TOKEN"))
    if key_id is None and secret is None:  # a key pair comes from one place, never half from each
        key_id = first(creds.get("aws_access_key_id"), config.get("aws_access_key_id"))
        secret = first(creds.get("aws_secret_access_key"), config.get("aws_secret_access_key"))
        token = first(creds.get("aws_session_token"), config.get("aws_session_token"))
    return AwsSettings(
        endpoint=first(env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"), config.get("endpoint_url")),
        region=first(env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION"), config.get("region")),
        access_key_id=key_id, secret_access_key=secret, session_token=token,
    )
