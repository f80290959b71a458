"""Auth links (the GoTrue ``/admin/generate_link`` family).

``generate`` mints, ``verify`` redeems, ``passwords`` and ``redirects`` are their rules,
``errorcodes`` their GoTrue ``error_code`` vocabulary (the edge answers with it);
``http`` is the only module here that speaks HTTP.
"""
