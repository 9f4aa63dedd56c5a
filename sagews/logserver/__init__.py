"""The sagews log server (issue 6) and the logging handler every service installs.

See docs/protocol-logserver.md.
"""
