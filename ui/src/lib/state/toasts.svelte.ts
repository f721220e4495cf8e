export type ToastKind = 'info' | 'error';

export interface ToastAction {
  label: string;
  run: () => void;
}

export interface Toast {
  id: number;
  kind: ToastKind;
  message: string;
  action: ToastAction | null;
}

const INFO_TIMEOUT_MS = 5000;
// Errors stay longer: they often explain why something the user did had no effect.
const ERROR_TIMEOUT_MS = 9000;

export class Toasts {
  items = $state<Toast[]>([]);
  private nextId = 1;

  show(message: string, options: { kind?: ToastKind; action?: ToastAction } = {}): number {
    const kind = options.kind ?? 'info';
    const toast: Toast = { id: this.nextId++, kind, message, action: options.action ?? null };
    this.items = [...this.items, toast];
    setTimeout(() => this.dismiss(toast.id), kind === 'error' ? ERROR_TIMEOUT_MS : INFO_TIMEOUT_MS);
    return toast.id;
  }

  error(message: string): number {
    return this.show(message, { kind: 'error' });
  }

  dismiss(id: number): void {
    this.items = this.items.filter((toast) => toast.id !== id);
  }
}
