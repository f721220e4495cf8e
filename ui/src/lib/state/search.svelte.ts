import type { SearchHit } from '../api/types';
import { toApiError } from '../transport/errors';
import type { Transport } from '../transport/types';
import { debounce } from '../timing';

/** Waits for a pause in typing before asking, so each keystroke is not a query. */
const SEARCH_DELAY_MS = 200;

export class Search {
  query = $state('');
  hits = $state<SearchHit[]>([]);
  error = $state<string | null>(null);
  /** A query is typed and its answer not in yet. */
  pending = $state(false);
  readonly active: boolean = $derived(this.query.trim() !== '');

  /** Only the answer to the latest query is shown. */
  private latest = 0;
  private readonly searchSoon = debounce((query: string) => void this.run(query), SEARCH_DELAY_MS);

  constructor(private readonly transport: Transport) {}

  setQuery(query: string): void {
    this.query = query;
    if (!query.trim()) {
      this.clear();
      return;
    }
    this.pending = true;
    this.searchSoon(query);
  }

  clear(): void {
    this.searchSoon.cancel();
    this.latest++;
    this.query = '';
    this.hits = [];
    this.error = null;
    this.pending = false;
  }

  private async run(query: string): Promise<void> {
    const request = ++this.latest;
    try {
      const hits = await this.transport.search({ query });
      if (request !== this.latest) return;
      this.hits = hits;
      this.error = null;
    } catch (error) {
      if (request !== this.latest) return;
      this.hits = [];
      this.error = toApiError(error).message;
    } finally {
      if (request === this.latest) this.pending = false;
    }
  }
}
