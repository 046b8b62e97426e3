"""ketch: a container engine and OCI runtime in Python.

A container is a set of ordinary host processes started with another root
filesystem and their own namespaces, on the host's own kernel.  The engine
(``ketch.engine``) turns an image plus options into an OCI runtime bundle; the
runtime (``ketch.runtime``) runs that bundle.
"""

__version__ = "0.1.0"
