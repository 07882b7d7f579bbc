"""Resumable, checksum-verified downloads of raw archives, and their unpacking.

A file whose checksum matches is never downloaded again; an interrupted download resumes from
its `.part` file with an HTTP Range request; a finished download whose checksum disagrees is
deleted and reported, never renamed into place.
"""

from __future__ import annotations

import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from codebrain.io import InputError, sha256sum

CHUNK = 1 << 20


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` (resuming a partial download); returns dest."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256sum(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the part file is already whole
            response = None
        else:
            raise InputError(f"{url}: download failed with HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise InputError(f"{url}: cannot connect ({err.reason})") from err
    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            total = response.length + (have if resumed else 0) if response.length is not None else None
            with open(part, mode) as handle, tqdm(total=total, initial=have if resumed else 0, unit="B",
                                                  unit_scale=True, desc=dest.name) as progress:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    progress.update(len(block))
    if sha256 is not None:
        got = sha256sum(part)
        if got != sha256:
            part.unlink()
            raise InputError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {got}); "
                             f"the partial file was removed, run again to retry")
    os.replace(part, dest)
    return dest


def extract(archive: str | Path, root: str | Path) -> Path:
    """Unpack a tarball into root/<archive stem>/ (IXI-T1.tar -> root/IXI-T1/); returns that folder."""
    archive, root = Path(archive), Path(root)
    stem = archive.name.split(".tar")[0]
    target = root / stem
    done = target / ".complete"
    if done.exists():
        return target
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{archive}: cannot unpack ({err})") from err
    done.write_text(sha256sum(archive))
    return target
