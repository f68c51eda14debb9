"""LunaSentri collector for Windows hosts over WinRM (WS-Management), with pywinrm.

Registered in the ``lunasentri`` entry-point group as ``winrm``; configure it
under ``[plugins.winrm]`` (see :class:`WinrmSettings`). :mod:`lunasentri_winrm.transport`
builds pywinrm clients and maps their errors, for this and the WMI collector.
"""
