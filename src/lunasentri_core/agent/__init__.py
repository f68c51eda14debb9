"""The push agent: collect through collector plugins, spool on disk, send, back off."""
