"""OMOP CDM databases as a data source: a study's table built inside each site's database.

:mod:`.definition` holds the study's ``[data.omop]`` format (cohort, outcome,
features in OMOP terms); :mod:`.query` compiles it to one SQLAlchemy Core
query; :mod:`.connection` opens a site's database with its credentials;
:mod:`.snapshot` freezes a site's extracted table, hashed and bound into its
approval.
"""
