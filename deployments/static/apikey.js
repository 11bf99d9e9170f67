// The API key typed in the form, remembered in this browser, sent as the bearer token the service asks for.

const STORAGE_KEY = "omniavatar-api-key";

/** Fill `input` with the remembered key and remember what the user types. */
export function rememberApiKey(input) {
  input.value = localStorage.getItem(STORAGE_KEY) || "";
  input.addEventListener("change", () => localStorage.setItem(STORAGE_KEY, input.value.trim()));
}

/** The Authorization header for the key in `input`, if any. */
export function authHeaders(input) {
  const key = input.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}
