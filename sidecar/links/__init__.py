"""Auth links (the GoTrue ``/admin/generate_link`` family).

``generate`` mints, ``verify`` redeems, ``passwords`` and ``redirects`` are their rules;
``http`` is the only module here that speaks HTTP.
"""
