"""A live, read-only web dashboard of a consortium's runs, sites and audits.

``lhs-fed dashboard`` serves it (see :mod:`~lhs_federated.dashboard.serve`);
:func:`~lhs_federated.dashboard.app.create_app` builds the ASGI app. It shows
only what the runs wrote to their own files, which are under disclosure
control when written, and never serves a file outside the folders it was given.
"""
