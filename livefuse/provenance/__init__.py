"""Responsible-use safeguards on what livefuse makes: C2PA content credentials on files
(``credentials``, ``certs``), and a visible label on live output (``label``); ``options``
reads their settings.

Kept free of imports so the CLI can name ``DEFAULT_LABEL`` cheaply. The C2PA library is
optional (the ``provenance`` extra); the label needs nothing extra.
"""

#: The live label's text when ``--label`` is given without one.
DEFAULT_LABEL = "AI-generated"
