"""The local GCS server of the tests: ``gcp-storage-emulator``, with two gaps to real Cloud
Storage closed, started as ``python tests/gcs_server.py start --host ... --port ...``.

1. A media download answers with the object's ``x-goog-generation`` and
   ``x-goog-metageneration`` headers, as Cloud Storage does
   (https://cloud.google.com/storage/docs/xml-api/reference-headers#xgooggeneration).
   TensorStore reads an object's generation there; without it every read has generation 0
   and the next conditional write (OCDBT's manifest, so every Orbax checkpoint) fails with
   ``Malformed StorageGeneration``.
2. Uploads and deletes honour ``ifGenerationMatch`` (``0``: only if no live object), answering
   412 otherwise, as Cloud Storage does
   (https://cloud.google.com/storage/docs/request-preconditions). The emulator ignores it; the
   workdir lease (kdjax/train/workdir_lock.py) is created and renewed with it. The check and
   the write hold one lock, so two racing uploads cannot both pass.
"""

import threading
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_WRITES = threading.Lock()


def _generation(storage, bucket: str, name: str) -> str:
  try:
    return storage.get_file_obj(bucket, name)['generation']
  except NotFound:
    return '0'


def _precondition_holds(request, storage, name: str) -> bool:
  wanted = request.query.get('ifGenerationMatch')
  return not wanted or wanted[0] == _generation(storage, request.params['bucket_name'], name)


def _upload_name(request) -> str:
  if 'name' in request.query:
    return request.query['name'][0]
  return (request.data or {}).get('meta', {}).get('name', '')


def _guarded(handler, name_of):
  def guarded(request, response, storage, *args, **kwargs):
    with _WRITES:
      if not _precondition_holds(request, storage, name_of(request)):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'conditionNotMet'}})
        return None
      return handler(request, response, storage, *args, **kwargs)
  return guarded


def _with_generation_headers(handler):
  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']
    except NotFound:
      pass  # the handler answers 404
    return handler(request, response, storage, *args, **kwargs)
  return download


# Before the server module reads the handlers into its routing table.
objects.download = _with_generation_headers(objects.download)
objects.insert = _guarded(objects.insert, _upload_name)
objects.delete = _guarded(objects.delete, lambda request: request.params['object_id'])

if __name__ == '__main__':
  from gcp_storage_emulator.__main__ import main
  main()
