"""Artifacts a user can open from the Prefect UI: https links to store objects, and images.

A browser cannot open ``s3://`` URIs, nor ``file://`` links from the UI's web page.  So:

* an object of an **S3 store** is linked by a presigned https URL (valid for
  ``$BZPIPE_LINK_EXPIRES_S`` seconds, default 7 days, the longest S3 signature v4 allows;
  a link artifact shows when it expires);
* any store can be published under a web server (a static file server, a CDN, MinIO with
  a public bucket policy): set ``$BZPIPE_STORE_PUBLIC_URL`` to the URL that serves the store
  root and every link becomes ``<that URL>/<key>``;
* otherwise (a local store without a web server) there is no URL: links fall back to the
  path as text, and images are embedded into a markdown artifact as ``data:`` URIs (the
  UI's sanitizer keeps ``data:`` images), so plots still show in the UI.

Image artifacts (:func:`publish_image`) use the https URL when there is one.
"""

from __future__ import annotations

import base64
import logging
import os

from bzpipe.store import Store

PUBLIC_URL_ENV = "BZPIPE_STORE_PUBLIC_URL"
EXPIRES_ENV = "BZPIPE_LINK_EXPIRES_S"
DEFAULT_EXPIRES_S = 7 * 24 * 3600
#: images larger than this are linked, not embedded (a data: URI lives in the artifact's row)
MAX_INLINE_BYTES = 1_500_000

log = logging.getLogger("bzpipe.flows.links")


def expires_s() -> int:
    try:
        return max(60, min(int(os.environ.get(EXPIRES_ENV, DEFAULT_EXPIRES_S)), DEFAULT_EXPIRES_S))
    except ValueError:
        return DEFAULT_EXPIRES_S


def browser_url(store: Store, key: str) -> str | None:
    """A URL a browser opens for ``key``: ``$BZPIPE_STORE_PUBLIC_URL/<key>``, a presigned S3 URL,
    or None (a local store without a web server)."""
    public = os.environ.get(PUBLIC_URL_ENV, "").strip()
    if public:
        return f"{public.rstrip('/')}/{key.lstrip('/')}"
    if store.is_local:
        return None
    try:
        return str(store.fs.sign(store.uri(key), expiration=expires_s()))
    except Exception as e:  # noqa: BLE001 - a link is a convenience; the artifact says why it is missing
        log.warning("no presigned URL for %s: %s: %s", store.uri(key), type(e).__name__, e)
        return None


def link_markdown(store: Store, key: str, text: str | None = None) -> str:
    """``[text](https://...)`` when there is a URL, else the store address as code."""
    url = browser_url(store, key)
    return f"[{text or key}]({url})" if url else f"`{store.uri(key)}`"


def publish_link(store: Store, key: str, *, artifact_key: str, text: str, description: str = "") -> str:
    """A link artifact to ``key`` (markdown with the path when there is no URL); returns what was linked."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    url = browser_url(store, key)
    if url:
        note = f" (presigned, valid {expires_s() // 3600} h)" if not os.environ.get(PUBLIC_URL_ENV) else ""
        create_link_artifact(link=url, link_text=text, key=artifact_key,
                             description=(description + note).strip())
        return url
    create_markdown_artifact(
        markdown=f"**{text}**: `{store.uri(key)}` (a local store; set ${PUBLIC_URL_ENV} to the URL of a web "
                 "server that serves the store root to get links here)",
        key=artifact_key, description=description)
    return store.uri(key)


def publish_image(store: Store, key: str, *, artifact_key: str, description: str = "",
                  data: bytes | None = None, title: str = "") -> str:
    """An image artifact of the PNG at ``key``: its https URL, else the image embedded in markdown.

    Returns ``"url"``, ``"inline"`` or ``"path"`` (too large to embed, no URL: the path as text).
    """
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    url = browser_url(store, key)
    if url:
        create_image_artifact(image_url=url, key=artifact_key, description=description)
        return "url"
    if data is None:
        data = store.read_bytes(key)
    heading = f"### {title}\n\n" if title else ""
    if len(data) <= MAX_INLINE_BYTES:
        b64 = base64.b64encode(data).decode("ascii")
        create_markdown_artifact(markdown=f"{heading}![{title or key}](data:image/png;base64,{b64})\n\n"
                                          f"`{store.uri(key)}`", key=artifact_key, description=description)
        return "inline"
    create_markdown_artifact(markdown=f"{heading}`{store.uri(key)}` ({len(data) / 1e6:.1f} MB; set "
                                      f"${PUBLIC_URL_ENV} to link it)", key=artifact_key,
                             description=description)
    return "path"

