"""The learning loop: releases, federated monitoring, alerts, updates and the gate.

train -> release (:mod:`.release`) -> monitor each period (:mod:`.monitor`,
drift from :mod:`lhs_federated.learning.drift`) -> alert (:mod:`.alerts`) ->
update (:mod:`.update`) -> gate (:mod:`.gate`) -> promote or keep; the whole
loop simulated over periods by :mod:`.simulation`.
"""
