// Svelte actions. Sizes are set through the CSSOM (`node.style`), which the CSP allows, never as a `style`
// attribute in markup, which it refuses.

import type { Action } from 'svelte/action';
import { handleCopyClick } from './clipboard';

/** Grows a textarea with its text up to its CSS `max-height`; the parameter is the text, so clearing it shrinks. */
export const autosize: Action<HTMLTextAreaElement, string> = (node) => {
  const resize = () => {
    node.style.height = 'auto';
    node.style.height = `${node.scrollHeight + node.offsetHeight - node.clientHeight}px`;
  };
  resize();
  node.addEventListener('input', resize);
  return {
    update: resize,
    destroy: () => node.removeEventListener('input', resize),
  };
};

export const focusOnMount: Action<HTMLInputElement | HTMLTextAreaElement> = (node) => {
  node.focus();
  node.select();
};

/** The copy buttons of the code blocks rendered inside `node`, handled with one listener. */
export const codeCopyButtons: Action<HTMLElement> = (node) => {
  const onClick = (event: MouseEvent) => void handleCopyClick(event);
  node.addEventListener('click', onClick);
  return { destroy: () => node.removeEventListener('click', onClick) };
};

/** Opens a <dialog> as modal as soon as it is in the page. */
export const showModal: Action<HTMLDialogElement> = (node) => {
  node.showModal();
};
