// The app's state, one instance of each, wired to the transport this window uses.

import { CacheMapState } from '../kv/cache-map.svelte';
import { transport } from '../transport';
import { Chat } from './chat.svelte';
import { Library } from './library.svelte';
import { Models } from './models.svelte';
import { Search } from './search.svelte';
import { ThemeState } from './theme.svelte';
import { Toasts } from './toasts.svelte';

export const toasts = new Toasts();
export const theme = new ThemeState();
export const library = new Library(transport, toasts);
export const chat = new Chat(transport, toasts, library);
export const search = new Search(transport);
export const models = new Models(transport, toasts);
export const cacheMap = new CacheMapState(transport);

library.onRemoved = (conversationId) => chat.closeIfOpen(conversationId);
cacheMap.onApplied = (conversation) => chat.conversationChanged(conversation);
