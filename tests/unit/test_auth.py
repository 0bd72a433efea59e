from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.auth import TokenVerifier, Unauthorized, bearer_token


def test_hs256_tokens_need_sub_and_exp() -> None:
    verifier = TokenVerifier(secret="s" * 32)
    good = jwt.encode({"sub": "ann", "exp": int(time.time()) + 60}, "s" * 32, algorithm="HS256")
    assert verifier.subject(good) == "ann"
    for bad in [
        None,
        "garbage",
        jwt.encode({"sub": "ann"}, "s" * 32, algorithm="HS256"),  # no exp
        jwt.encode({"sub": "ann", "exp": int(time.time()) - 1}, "s" * 32, algorithm="HS256"),
        jwt.encode({"sub": "ann", "exp": int(time.time()) + 60}, "t" * 32, algorithm="HS256"),
    ]:
        with pytest.raises(Unauthorized):
            verifier.subject(bad)


def test_rs256_with_a_public_key_refuses_hs256_tokens() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = TokenVerifier(public_key=public_pem)
    claims = {"sub": "bob", "exp": int(time.time()) + 60}
    assert verifier.subject(jwt.encode(claims, key, algorithm="RS256")) == "bob"
    with pytest.raises(Unauthorized):  # algorithm confusion: the public key used as an HMAC secret
        verifier.subject(jwt.encode(claims, "x" * 32, algorithm="HS256"))


def test_only_token_shaped_strings_are_taken() -> None:
    assert bearer_token("Bearer abc.DEF-1_2", None) == "abc.DEF-1_2"
    assert bearer_token(None, "q.t") == "q.t"
    assert bearer_token("Basic xyz", "q") == "q"
    assert bearer_token(None, "töken") is None and bearer_token("Bearer a b", None) is None
