"""The station web page: search, listen, look, watch activity and health from a phone.

`create_app(WebSettings(...))` builds the Starlette application (pages, the JSON API
under ``/api/``, audio and spectrograms by store row id, login); ``cvahash serve`` runs it
under uvicorn. Needs the ``web`` extra (``pip install '.[web]'`` in the cvahash checkout)
and, for the spectrograms, the ``plots`` extra; docs/web.md describes the pages, the API
and the security model.
"""
