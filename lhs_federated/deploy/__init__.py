"""Deployment: the coordinator's SuperLink, each site's SuperNode and gated launcher.

Everything here drives real Flower processes; the study logic they run is the
same ServerApp and ClientApp as in simulation.
"""
