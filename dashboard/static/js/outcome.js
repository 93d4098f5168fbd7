// What a dispatch command's answer means, in words for the dispatcher (api.js `command`).

import { ApiError } from "./api.js";

export const PENDING = "pending: published, the bridge has not applied it yet";

// A failed command's reason: the API's own text, after what the status means here.
export function refusal(err) {
  if (!(err instanceof ApiError)) return `failed: ${err.message}`;
  if (err.status === 403) return `this token cannot dispatch: ${err.text}`;
  if (err.status === 409) return `refused: ${err.text}`;
  return `${err.status}: ${err.text}`;
}
