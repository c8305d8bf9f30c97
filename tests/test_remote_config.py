"""Where the remote store is and how `pc` signs in: the URL, the AWS variables and files, and the
messages that never carry a credential. No server needed (tests/test_remote.py has the real one)."""

from __future__ import annotations

import pytest

from promptcache_cli.errors import RemoteError, UsageError
from promptcache_cli.store.remote import Remote
from promptcache_cli.store.remote_config import aws_settings, parse_url


def test_urls():
    assert str(parse_url("s3://my-bucket")) == "s3://my-bucket"
    u = parse_url("s3://my-bucket//team/pc/")
    assert (u.bucket, u.prefix, u.key("modules/ab/x.pcm")) == ("my-bucket", "team/pc", "team/pc/modules/ab/x.pcm")
    for bad in ("http://host/bucket", "my-bucket/x", "s3://AB", "s3://bucket/../x", "s3://user:pw@bucket/x",
                "s3://bucket/x?versionId=1", "s3://bucket/a b"):
        with pytest.raises(UsageError) as info:
            parse_url(bad)
        assert "pw" not in str(info.value)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_variables_come_first_then_the_profile_files(tmp_path):
    creds = write(tmp_path / "credentials", "[default]\naws_access_key_id = FILEKEYID00000000\n"
                  "aws_secret_access_key = file-secret-0000000000\n[team]\naws_access_key_id = TEAMKEYID0000000\n"
                  "aws_secret_access_key = team-secret-0000000000\naws_session_token = team-token\n")
    config = write(tmp_path / "config", "[default]\nregion = eu-west-3\n[profile team]\nregion = auto\n"
                   "endpoint_url = https://acct.r2.cloudflarestorage.com\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": config, "HOME": str(tmp_path)}
    s = aws_settings(files)
    assert (s.access_key_id, s.secret_access_key, s.region, s.endpoint) == (
        "FILEKEYID00000000", "file-secret-0000000000", "eu-west-3", None)
    s = aws_settings({**files, "AWS_PROFILE": "team"})
    assert (s.access_key_id, s.session_token, s.region, s.endpoint) == (
        "TEAMKEYID0000000", "team-token", "auto", "https://acct.r2.cloudflarestorage.com")
    s = aws_settings({**files, "AWS_PROFILE": "team", "AWS_ACCESS_KEY_ID": "ENVKEYID000000000",
                      "AWS_SECRET_ACCESS_KEY": "env-secret-00000000000", "AWS_REGION": "us-west-2",
                      "AWS_ENDPOINT_URL": "http://10.0.0.5:8333", "AWS_ENDPOINT_URL_S3": "http://seaweed:8333"})
    assert (s.access_key_id, s.secret_access_key, s.session_token, s.region, s.endpoint) == (
        "ENVKEYID000000000", "env-secret-00000000000", None, "us-west-2", "http://seaweed:8333")
    assert "secret" not in repr(s)
    assert aws_settings({"HOME": str(tmp_path / "nowhere")}) == aws_settings({"HOME": str(tmp_path / "nowhere2")})


def test_no_credentials_and_no_metadata_service_is_one_line_without_a_request(tmp_path):
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    with pytest.raises(RemoteError) as info:
        Remote("s3://bucket/x", env=env).head("a")
    assert "no credentials" in str(info.value) and "\n" not in str(info.value)


def test_a_credential_in_a_message_is_masked(tmp_path):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    r = Remote("s3://bucket/x", env={"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                                     "AWS_SECRET_ACCESS_KEY": secret})
    err = r._error(RuntimeError(f"signature with {secret} for AKIAIOSFODNN7EXAMPLE refused"), "cannot list")
    assert secret not in str(err) and "AKIAIOSFODNN7EXAMPLE" not in str(err)
