/**
 * Where the `openssl` provider looks for OpenSSL 3's libcrypto: the one list
 * of candidate paths, used by the program (lib/protocol/crypto/select.ts) and by the
 * `./cipherlink` launcher (through lib/cli/ffi_grant.ts) to grant `--allow-ffi`
 * for exactly the path the program will open: Deno checks the very string
 * handed to dlopen, so both must name the library the same way.
 *
 * @module
 */

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env for it
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Directories named by the loader's configuration (/etc/ld.so.conf.d/*.conf). */
function loaderConfigDirs(): string[] {
  const dirs: string[] = [];
  try {
    for (const entry of Deno.readDirSync("/etc/ld.so.conf.d")) {
      if (!entry.name.endsWith(".conf")) continue;
      const text = Deno.readTextFileSync(`/etc/ld.so.conf.d/${entry.name}`);
      for (const line of text.split("\n")) {
        const dir = line.trim();
        if (dir.startsWith("/")) dirs.push(dir);
      }
    }
  } catch {
    // not Linux, or not readable: the fixed list still applies
  }
  return dirs.sort();
}

/**
 * Candidate libcrypto paths, in the order they are tried: LD_LIBRARY_PATH,
 * the loader's configured directories and the usual system directories on
 * Linux; Homebrew's and MacPorts' prefixes on macOS; the DLL name (resolved
 * by the Windows loader) on Windows.
 */
export function libcryptoCandidates(): string[] {
  switch (Deno.build.os) {
    case "darwin":
      return [
        "/opt/homebrew/opt/openssl@3/lib/libcrypto.3.dylib",
        "/usr/local/opt/openssl@3/lib/libcrypto.3.dylib",
        "/opt/local/lib/libcrypto.3.dylib",
      ];
    case "windows":
      return ["libcrypto-3-x64.dll", "libcrypto-3.dll"];
    default: {
      const triple = `${Deno.build.arch}-linux-gnu`;
      const dirs = [
        ...(env("LD_LIBRARY_PATH") ?? "").split(":").filter((d) => d.startsWith("/")),
        ...loaderConfigDirs(),
        `/usr/lib/${triple}`,
        `/lib/${triple}`,
        "/usr/lib64",
        "/lib64",
        "/usr/lib",
        "/lib",
        "/usr/local/lib64",
        "/usr/local/lib",
      ];
      return [...new Set(dirs)].map((dir) => `${dir.replace(/\/+$/, "")}/libcrypto.so.3`);
    }
  }
}

/**
 * The libcrypto path to open: `explicit` (from --libcrypto or a config file)
 * as given, else the first candidate that exists. `tried` lists what was
 * looked at, for the error message when nothing is found (undefined).
 * `candidates` replaces the search list (tests).
 */
export function locateLibcrypto(
  explicit?: string,
  candidates: () => string[] = libcryptoCandidates,
): { path?: string; tried: string[] } {
  if (explicit !== undefined) return { path: explicit, tried: [explicit] };
  const tried = candidates();
  // On Windows the loader resolves the bare DLL name itself.
  if (Deno.build.os === "windows") return { path: tried[0], tried };
  return { path: tried.find(exists), tried };
}
