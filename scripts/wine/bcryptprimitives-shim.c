/* WINE-ONLY TEST SHIM. Never shipped, never installed on Windows.
 *
 * Rust's standard library imports ProcessPrng from bcryptprimitives.dll
 * (Windows 10+). Wine 8 has no such export, so a Rust .exe fails to load
 * under it. This DLL, placed next to the .exe only in the Wine test prefix,
 * exports ProcessPrng over RtlGenRandom (advapi32 SystemFunction036), which
 * Wine has. Real Windows has the real DLL. Built by scripts/test-windows. */
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
