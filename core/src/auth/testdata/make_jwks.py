"""Writes jwks.json from the public PEM files beside it (run once; see README.md)."""
import base64, json
from cryptography.hazmat.primitives import serialization

def b64(n_bytes):
    return base64.urlsafe_b64encode(n_bytes).rstrip(b"=").decode()

def load(path):
    return serialization.load_pem_public_key(open(path, "rb").read())

def uint(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")

rsa = load("rsa_public.pem").public_numbers()
ec = load("ec_public.pem").public_numbers()
ed = load("ed_public.pem").public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
keys = [
    {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(uint(rsa.n)), "e": b64(uint(rsa.e))},
    {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256",
     "x": b64(ec.x.to_bytes(32, "big")), "y": b64(ec.y.to_bytes(32, "big"))},
    {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(ed)},
    # An encryption key: a verifier must skip it.
    {"kty": "RSA", "kid": "rsa-enc", "use": "enc", "n": b64(uint(rsa.n)), "e": b64(uint(rsa.e))},
]
json.dump({"keys": keys}, open("jwks.json", "w"), indent=2)
