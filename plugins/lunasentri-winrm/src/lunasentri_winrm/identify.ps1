$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
# LunaSentri winrm identify: who this host is.
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$json = ConvertTo-Json -Compress -InputObject ([ordered]@{
    hostname = $os.CSName; os = $os.Caption; version = $os.Version
})
[regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
