"""Refer links (the Unqork ``/referstring`` family).

``minting`` seals them on the admin port; ``redeem`` turns them into sessions on the proxy.
"""
