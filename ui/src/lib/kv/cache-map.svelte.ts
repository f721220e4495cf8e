// The token map and the A/B switch: which simulation to show, fetched from `cache_map` when the conversation, the
// choice or the stored branch changes (after a finished reply, never per token).
import type { CacheMap, ConversationInfo } from '../api/types';
import { toApiError } from '../transport/errors';
import type { Transport } from '../transport/types';
import { profileToApply, segmentsByMessage, simulatedSpec, type AbChoice } from './cache-map';

/** What the app tells the store on every change of the conversation on screen. */
export interface CacheMapInputs {
  conversationId: number | null;
  /** The conversation's stored cache profile (`null`: the app's default). */
  cacheProfile: string | null;
  /** A reply is being generated in this conversation: the stored branch is about to change. */
  generating: boolean;
  /** Changes whenever the stored branch does (ids and statuses of its messages). */
  branchKey: string;
}

export class CacheMapState {
  /** Shade the transcript by what the cache holds. */
  tokenMap = $state(false);
  choice = $state<AbChoice>('live');
  /** The simulation for the current inputs; null while none is needed, loading or failed. */
  map = $state.raw<CacheMap | null>(null);
  loading = $state(false);
  error = $state<string | null>(null);
  /** Set by the app: a conversation row changed (the profile applied). */
  onApplied: (conversation: ConversationInfo) => void = () => {};

  /** The token map's segments by message id (empty while the map is off). */
  readonly segments = $derived(segmentsByMessage(this.tokenMap ? this.map : null));
  /** The simulation the panel shows instead of the live readout. */
  readonly simulated: CacheMap | null = $derived(this.choice !== 'live' ? this.map : null);

  private inputs = $state.raw<CacheMapInputs>({ conversationId: null, cacheProfile: null, generating: false, branchKey: '' });
  private fetchedKey = '';
  private request = 0;

  constructor(private readonly transport: Transport) {}

  get needed(): boolean {
    return this.tokenMap || this.choice !== 'live';
  }

  /** The profile "Use for this conversation" would store, or null when there is nothing to apply. */
  get applicable(): string | null {
    return profileToApply(this.choice, this.inputs.cacheProfile);
  }

  follow(inputs: CacheMapInputs): void {
    if (inputs.conversationId !== this.inputs.conversationId) this.choice = 'live';
    this.inputs = inputs;
    void this.refresh();
  }

  select(choice: AbChoice): void {
    this.choice = choice;
    void this.refresh();
  }

  setTokenMap(on: boolean): void {
    this.tokenMap = on;
    void this.refresh();
  }

  /** Stores the chosen profile as the conversation's; its next reply uses it. */
  async apply(): Promise<void> {
    const profile = this.applicable;
    const conversationId = this.inputs.conversationId;
    if (profile === null || conversationId === null) return;
    try {
      const conversation = await this.transport.set_cache_profile({ conversation_id: conversationId, cache_profile: profile });
      this.inputs = { ...this.inputs, cacheProfile: conversation.cache_profile };
      this.choice = 'current';
      this.onApplied(conversation);
      await this.refresh();
    } catch (error) {
      this.error = toApiError(error).message;
    }
  }

  /** Fetches the simulation the inputs and choice need, unless it is the one shown (or a reply is streaming). */
  async refresh(): Promise<void> {
    const { conversationId, cacheProfile, generating, branchKey } = this.inputs;
    if (conversationId === null || !this.needed) {
      this.request++;
      this.fetchedKey = '';
      this.map = null;
      this.loading = false;
      this.error = null;
      return;
    }
    // While a reply streams keep what is shown; the stored branch after it is fetched once.
    if (generating) return;
    const cache = simulatedSpec(this.choice);
    const key = JSON.stringify([conversationId, cache, cacheProfile, branchKey]);
    if (key === this.fetchedKey) return;
    this.fetchedKey = key;
    const request = ++this.request;
    this.map = null;
    this.loading = true;
    this.error = null;
    try {
      const map = await this.transport.cache_map({ conversation_id: conversationId, cache });
      if (request === this.request) this.map = map;
    } catch (error) {
      if (request === this.request) {
        this.error = toApiError(error).message;
        // Asked again on the next change rather than never.
        this.fetchedKey = '';
      }
    } finally {
      if (request === this.request) this.loading = false;
    }
  }
}
