"""icefloe's deployments: the four the contract names, served by ``icefloe serve``."""
