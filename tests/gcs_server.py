"""A local Google Cloud Storage server for the bucket tests: gcp-storage-emulator (real HTTP, the GCS JSON API),
with two behaviours of GCS that it lacks and that the clients rely on:

- downloads carry the object's generation (``x-goog-generation``): TensorStore's OCDBT store (Orbax's array
  format) reads it to write its manifest conditionally, and fails with "Malformed StorageGeneration" without;
- ``ifGenerationMatch`` preconditions on uploads and deletes (0: only if there is no such object), answered with
  412 Precondition Failed, as GCS does: the run lock's lease depends on them;
- a listen backlog for many concurrent connections (gcsfs fetches a batch of images at once): with the standard
  library's 5, the connections beyond it are dropped and retried a second later.

    python tests/gcs_server.py PORT BUCKET

Clients reach it through STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) and TENSORSTORE_GCS_HTTP_URL
(TensorStore), with GOOGLE_AUTH_TOKEN_FOR_TESTING set (TensorStore asks for a token).
"""

from __future__ import annotations

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.storage import Storage

_expected = threading.local()  # the upload precondition of the request this thread is handling


class PreconditionFailed(Exception):
    pass


def _generation(storage: Storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name).get("generation") or "0")
    except NotFound:
        return "0"


def _check(storage: Storage, bucket: str, name: str) -> None:
    expected = getattr(_expected, "value", None)
    if expected is not None and _generation(storage, bucket, name) != expected:
        raise PreconditionFailed


_create_file = Storage.create_file


def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
    _check(self, bucket_name, file_name)
    return _create_file(self, bucket_name, file_name, content, file_obj, file_id)


def with_gcs_semantics(handler):
    def handle(request, response, storage, *args, **kwargs):
        match = request.query.get("ifGenerationMatch")
        _expected.value = match[0] if match else None
        params = getattr(request, "params", {}) or {}
        try:
            if handler.__name__ == "delete" and "object_id" in params:
                _check(storage, params["bucket_name"], params["object_id"])
            handler(request, response, storage, *args, **kwargs)
        except PreconditionFailed:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did "
                                                            "not hold.", "errors": [{"reason": "conditionNotMet"}]}})
            return
        finally:
            _expected.value = None
        if handler.__name__ in ("download", "get") and response.status == HTTPStatus.OK and "object_id" in params:
            generation = _generation(storage, params["bucket_name"], params["object_id"])
            response["x-goog-generation"] = generation
            response["x-goog-metageneration"] = "1"
    return handle


def patch() -> None:
    import http.server

    http.server.HTTPServer.request_queue_size = 1024
    Storage.create_file = create_file
    server.HANDLERS = tuple((regex, {method: with_gcs_semantics(h) for method, h in handlers.items()})
                            for regex, handlers in server.HANDLERS)


def main(port: int, bucket: str) -> None:
    patch()
    srv = server.create_server("localhost", port, in_memory=True, default_bucket=bucket)
    print(f"listening on {port}", flush=True)
    srv.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
