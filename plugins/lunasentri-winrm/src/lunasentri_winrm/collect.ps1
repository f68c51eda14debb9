$ProgressPreference = 'SilentlyContinue'
$ErrorActionPreference = 'Stop'
# LunaSentri winrm collector: one poll. Raw perf counters, never the cooked
# Formatted classes: the collector turns them into rates between polls.
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$result = [ordered]@{
    hostname = $os.CSName
    memory = [ordered]@{
        total_kib = $os.TotalVisibleMemorySize
        free_kib = $os.FreePhysicalMemory
        paging_kib = $os.SizeStoredInPagingFiles
        paging_free_kib = $os.FreeSpaceInPagingFiles
    }
    processes = $os.NumberOfProcesses
    uptime_s = ($os.LocalDateTime - $os.LastBootUpTime).TotalSeconds
    cpu = @(Get-CimInstance -ClassName Win32_PerfRawData_PerfOS_Processor | ForEach-Object {
        [ordered]@{ name = $_.Name; idle = $_.PercentProcessorTime; timestamp = $_.Timestamp_Sys100NS }
    })
    disks = @(Get-CimInstance -ClassName Win32_LogicalDisk -Filter 'DriveType = 3' | ForEach-Object {
        [ordered]@{ mount = $_.DeviceID; size = $_.Size; free = $_.FreeSpace }
    })
    nics = @(Get-CimInstance -ClassName Win32_PerfRawData_Tcpip_NetworkInterface | ForEach-Object {
        [ordered]@{
            name = $_.Name; rx = $_.BytesReceivedPersec; tx = $_.BytesSentPersec
            timestamp = $_.Timestamp_Sys100NS; frequency = $_.Frequency_Sys100NS
        }
    })
}
$json = ConvertTo-Json -InputObject $result -Depth 4 -Compress
# ASCII only: the console's code page would mangle other characters on the way out.
[regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
