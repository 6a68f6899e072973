"""The folders of an artifact store's root, beside the ``<aa>/<sha256>.<suffix>`` files."""

#: Folder (under a local root) for writes in flight; older files there are crash orphans.
TEMP_FOLDER = ".tmp"
#: Folder (under the root) mapping fingerprints of Arrow tables to stored digests.
FINGERPRINTS = "fingerprints"
#: Folder (object storage) of markers of reused artifacts (see ``_reuse`` and sweep.py).
TOUCHED = "touched"
