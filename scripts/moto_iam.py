#!/usr/bin/env python3
"""moto's server with IAM enforcement, its request canonicalisation fixed (run by moto.sh start-iam).

moto (5.2.1) checks a request's SigV4 signature by recomputing it with botocore from the URL
werkzeug gives it. Werkzeug turns that URL into an IRI and so decodes percent-escapes the
client sent: a listing signed, as SigV4 requires, with `prefix=billing%2F` is recomputed with
`prefix=billing/` and refused with `SignatureDoesNotMatch` (boto3's own listings fail the same
way). This wrapper encodes the path and the query again as SigV4 canonicalises them (each
path segment and each query key and value percent-encoded once, only `A-Za-z0-9-_.~` left
as they are) before moto recomputes the signature; nothing else changes: the signature is
still checked, and every action still goes through moto's IAM policy evaluation.

Usage: moto_iam.py -H 127.0.0.1 -p PORT (the arguments of moto_server); the environment
must set INITIAL_NO_AUTH_ACTION_COUNT.
"""

import sys
from urllib.parse import quote, unquote, urlsplit

from moto.iam import access_control


def canonical_url(url: str) -> str:
    """The path and query of `url`, each part percent-encoded once as SigV4 wants."""
    parts = urlsplit(url)
    path = "/".join(quote(unquote(seg), safe="-_.~") for seg in parts.path.split("/"))
    if not parts.query:
        return path
    pairs = []
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        pairs.append(f"{quote(unquote(key), safe='-_.~')}={quote(unquote(value), safe='-_.~')}")
    return f"{path}?{'&'.join(pairs)}"


_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _create_canonical_aws_request(self):  # type: ignore[no-untyped-def]
    request = _create_aws_request(self)
    request.url = canonical_url(request.url)
    return request


access_control.IAMRequestBase._create_aws_request = _create_canonical_aws_request

if __name__ == "__main__":
    from moto.server import main

    main(sys.argv[1:])
