/**
 * This device's identity when nothing configures one: a name-based UUID of the machine's
 * id (`/etc/machine-id`, unique per installed system), else of its host name. The same
 * machine always gets the same id, so the upload manager and quick upload write to the
 * same rows even without a shared tracking database.
 *
 * @module
 */

import { createHash } from "node:crypto";

/**
 * A name-based UUID (version 3 layout: md5) of `name`.
 *
 * @example
 * ```ts
 * nameBasedUuid("pi-lab-3") === nameBasedUuid("pi-lab-3"); // true
 * ```
 */
export function nameBasedUuid(name: string): string {
  const bytes = createHash("md5").update(`folder-uploader device ${name}`).digest();
  bytes[6] = (bytes[6] & 0x0f) | 0x30;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${
    hex.slice(20)
  }`;
}

/** The machine's id from systemd or D-Bus, or undefined when neither file can be read. */
export function machineId(
  paths: readonly string[] = ["/etc/machine-id", "/var/lib/dbus/machine-id"],
): string | undefined {
  for (const path of paths) {
    try {
      const id = Deno.readTextFileSync(path).trim();
      if (/^[0-9a-f]{32}$/i.test(id)) return id.toLowerCase();
    } catch {
      // Not on this system (macOS, a container without it): try the next source.
    }
  }
  return undefined;
}

/** This device's default id: from the machine id when there is one, else the host name. */
export function localDeviceId(): string {
  const id = machineId();
  return id ? nameBasedUuid(`machine-id ${id}`) : nameBasedUuid(Deno.hostname());
}
