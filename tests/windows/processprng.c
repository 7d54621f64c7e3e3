/* Test scaffolding for Wine 8.0, never shipped: Rust's std (1.78 and later) imports ProcessPrng
 * from bcryptprimitives.dll, which real Windows 10 and later have and Wine 8.0 lacks, so every
 * Rust exe fails to start under it (c0000135). This DLL provides the one export, backed by
 * RtlGenRandom (SystemFunction036 in advapi32), which Wine has. `make wine-prefix` builds it and
 * copies it into the Wine prefix's system32. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
