/**
 * Passwords drawn from printable ASCII, and the leak check of the password property: no
 * output contains three consecutive characters of the password that are not in the rest of
 * the URL (nor in what the same command prints for an unrelated password, its fixed words).
 *
 * @module
 */

/** A password of `min`..`max` characters from printable ASCII (space to `~`). */
export function randomPassword(random: () => number, min = 6, max = 24): string {
  const length = min + Math.floor(random() * (max - min + 1));
  let text = "";
  for (let i = 0; i < length; i++) text += String.fromCharCode(0x20 + Math.floor(random() * 95));
  return text;
}

/** Every three consecutive characters of `text`. */
export function trigrams(text: string): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i + 3 <= text.length; i++) out.add(text.slice(i, i + 3));
  return out;
}

/** Digits as `0`, so durations, pids and times of two runs compare equal. */
export function sameDigits(text: string): string {
  return text.replace(/[0-9]/g, "0");
}

/**
 * The trigrams of `password` found in `output` that are neither in `allowed` (the rest of
 * the URL, and what the command prints for an unrelated password) — each one a leak.
 * With `digits: false` digits are compared as `0` everywhere (for outputs holding times).
 */
export function leakedTrigrams(
  output: string,
  password: string,
  allowed: string,
  options: { digits?: boolean } = {},
): string[] {
  const norm = options.digits === false ? sameDigits : (t: string) => t;
  const known = trigrams(norm(allowed));
  const text = norm(output);
  return [...trigrams(norm(password))].filter((t) => !known.has(t) && text.includes(t));
}
