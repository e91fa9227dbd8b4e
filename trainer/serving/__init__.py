"""Serving: a trained job as a SavedModel that takes image bytes, and predictions with it.

    saved_model.py  the served module and its export (the work of `python -m trainer.export`)
    litert.py       its LiteRT model, checked against it (`python -m trainer.export --litert`)
    predict.py      image files in, one prediction per file out (`python -m trainer.predict`)
    faces.py        faces in whole photos, found and aligned (`trainer.predict --detect_faces`)
    server.py       the HTTP server of `python -m trainer.serve`: its page (page.html), faces
                    in photos, and TF Serving's REST predict API (rest.py)

It builds on the core (trainer.checkpoint, input.images); the core never imports it.
"""
