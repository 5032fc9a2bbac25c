"""icefloe's writer library and the Prefect tasks that wrap its phases.

The writer core (``tasks.writer`` and the modules it uses) does not import Prefect.
"""
