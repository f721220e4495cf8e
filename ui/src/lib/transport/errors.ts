import type { ApiError, ErrorCode } from '../api/types';

const ERROR_CODES: readonly ErrorCode[] = [
  'not_found',
  'invalid_input',
  'busy',
  'model',
  'storage',
  'engine',
  'io',
  'internal',
];

export function isApiError(value: unknown): value is ApiError {
  if (typeof value !== 'object' || value === null) return false;
  const { code, message } = value as Record<string, unknown>;
  return typeof message === 'string' && ERROR_CODES.includes(code as ErrorCode);
}

/** Anything thrown, as an `ApiError`, so callers branch on one shape. */
export function toApiError(thrown: unknown): ApiError {
  if (isApiError(thrown)) return { code: thrown.code, message: thrown.message };
  if (thrown instanceof Error) return { code: 'internal', message: thrown.message || thrown.name };
  return { code: 'internal', message: String(thrown) };
}

/** The code a status stands for, for an error answer that carries no `ApiError` (a proxy, a crash). */
export function codeForStatus(status: number): ErrorCode {
  if (status === 404) return 'not_found';
  if (status === 409 || status === 429) return 'busy';
  if (status >= 400 && status < 500) return 'invalid_input';
  return 'internal';
}
