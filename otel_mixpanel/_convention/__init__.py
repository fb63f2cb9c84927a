"""The ``mixpanel.*`` convention: the one table of keys (``_table``), and the
translation of a flat tagged mapping into messages (``_translate``, with the
profile and group updates in ``_updates``).

Every key is handled here and nowhere else, whatever the input; the messages
this produces (``otel_mixpanel._model``) are all the sending queue sees.
"""
