#!/usr/bin/env python3
"""AES-256-GCM through libxki_pkcs11.so with python-pkcs11, as a Python consumer would use it.

Usage: python_gcm.py MODULE_SO TOKEN_LABEL PIN

Opens the token, logs in, finds or generates an AES-256 key (sensitive, not extractable),
checks its attributes, does a GCM round trip with AAD, and checks that a tampered tag, a wrong
AAD, reading CKA_VALUE and python-pkcs11's default (wrap/sign-capable) key template all fail.
Exits non-zero (with a message) on the first failed check.
"""

import os
import sys

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (
    AttributeSensitive,
    EncryptedDataInvalid,
    NoSuchKey,
    TemplateInconsistent,
)
from pkcs11.mechanisms import GCMParams


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


def main():
    so, token_label, pin = sys.argv[1:4]
    lib = pkcs11.lib(so)
    token = lib.get_token(token_label=token_label)
    check(token.label == token_label, f"token label {token.label!r}")
    key_label = f"py-gcm-{token_label}"
    with token.open(user_pin=pin, rw=True) as session:
        try:
            key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=key_label)
        except NoSuchKey:
            key = session.generate_key(
                KeyType.AES,
                256,
                label=key_label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.EXTRACTABLE: False},
            )
        check(key.key_length == 256, f"key length {key.key_length}")
        check(key[Attribute.SENSITIVE] is True, "CKA_SENSITIVE")
        check(key[Attribute.EXTRACTABLE] is False, "CKA_EXTRACTABLE")
        check(key[Attribute.NEVER_EXTRACTABLE] is True, "CKA_NEVER_EXTRACTABLE")
        try:
            key[Attribute.VALUE]
            check(False, "CKA_VALUE was readable")
        except AttributeSensitive:
            pass

        data = os.urandom(1000)
        aad = b"python-pkcs11 associated data"
        iv = os.urandom(12)
        ct = key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad))
        check(len(ct) == len(data) + 16, f"ciphertext length {len(ct)}")
        pt = key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad))
        check(pt == data, "round trip")

        tampered = ct[:-1] + bytes([ct[-1] ^ 1])
        for what, blob, a in (("tampered tag", tampered, aad), ("wrong AAD", ct, b"other")):
            try:
                key.decrypt(blob, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, a))
                check(False, f"{what}: decrypted")
            except EncryptedDataInvalid:
                pass

        # python-pkcs11's default AES capabilities include wrap/unwrap/sign: refused.
        try:
            session.generate_key(KeyType.AES, 256, label=f"{key_label}-weak", store=True)
            check(False, "default template (wrap/sign capable) was accepted")
        except TemplateInconsistent:
            pass
        # Found again by label: the same key.
        again = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=key_label)
        check(
            again.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad))
            == data,
            "found key decrypts",
        )
    print(f"python_gcm.py: {token_label}: all checks passed")


if __name__ == "__main__":
    main()
