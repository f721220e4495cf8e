import type { ConversationInfo, ExportFormat } from '../api/types';
import { downloadText, exportFileName } from '../download';
import { toApiError } from '../transport/errors';
import type { Transport } from '../transport/types';
import { conversationTitle, sortConversations, upsertConversation, withoutConversation } from './conversations';
import type { Toasts } from './toasts.svelte';

/** The conversation list and the trash, and what the sidebar does to them. */
export class Library {
  conversations = $state<ConversationInfo[]>([]);
  trash = $state<ConversationInfo[]>([]);
  showingTrash = $state(false);
  /** Told when a conversation leaves the list (trashed or deleted), so the chat can close it. */
  onRemoved: (conversationId: number) => void = () => {};

  constructor(
    private readonly transport: Transport,
    private readonly toasts: Toasts,
  ) {}

  /** Keeps the list in step with changes the backend announces (the desktop shell's notices). */
  follow(): void {
    void this.transport.onNotice((notice) => {
      if (notice.kind === 'conversations_changed') void this.refresh();
    });
  }

  async refresh(): Promise<void> {
    try {
      this.conversations = sortConversations(await this.transport.list_conversations());
    } catch (error) {
      this.toasts.error(`Cannot load the conversations: ${toApiError(error).message}`);
    }
  }

  async refreshTrash(): Promise<void> {
    try {
      this.trash = await this.transport.list_trash();
    } catch (error) {
      this.toasts.error(`Cannot load the trash: ${toApiError(error).message}`);
    }
  }

  /** A row the server sent back after a change elsewhere (settings, a new conversation). */
  upsert(conversation: ConversationInfo): void {
    this.conversations = upsertConversation(this.conversations, conversation);
  }

  async rename(conversationId: number, title: string): Promise<void> {
    await this.change(() => this.transport.rename_conversation({ conversation_id: conversationId, title }));
  }

  async setPinned(conversationId: number, pinned: boolean): Promise<void> {
    await this.change(() => this.transport.pin_conversation({ conversation_id: conversationId, pinned }));
  }

  /** Moves it to the trash at once; the toast's Undo brings it back (no confirmation dialog to click through). */
  async trashConversation(conversationId: number): Promise<void> {
    try {
      const trashed = await this.transport.delete_conversation({ conversation_id: conversationId });
      this.conversations = withoutConversation(this.conversations, conversationId);
      this.onRemoved(conversationId);
      this.toasts.show(`Moved “${conversationTitle(trashed)}” to the trash`, {
        action: { label: 'Undo', run: () => void this.restore(conversationId) },
      });
      if (this.showingTrash) await this.refreshTrash();
    } catch (error) {
      this.toasts.error(toApiError(error).message);
    }
  }

  async restore(conversationId: number): Promise<void> {
    const restored = await this.change(() => this.transport.restore_conversation({ conversation_id: conversationId }));
    if (restored) this.trash = withoutConversation(this.trash, conversationId);
  }

  async purge(conversationId: number): Promise<void> {
    try {
      await this.transport.purge_conversation({ conversation_id: conversationId });
      this.trash = withoutConversation(this.trash, conversationId);
      this.conversations = withoutConversation(this.conversations, conversationId);
      this.onRemoved(conversationId);
    } catch (error) {
      this.toasts.error(toApiError(error).message);
    }
  }

  async emptyTrash(): Promise<void> {
    try {
      const deleted = await this.transport.empty_trash();
      for (const conversation of this.trash) this.onRemoved(conversation.id);
      this.trash = [];
      this.toasts.show(`Deleted ${deleted} conversation${deleted === 1 ? '' : 's'} for good`);
    } catch (error) {
      this.toasts.error(toApiError(error).message);
    }
  }

  async toggleTrash(): Promise<void> {
    this.showingTrash = !this.showingTrash;
    if (this.showingTrash) await this.refreshTrash();
  }

  /** Downloads one conversation (or, with `null`, all of them) in the format. */
  async exportDocument(conversation: ConversationInfo | null, format: ExportFormat): Promise<void> {
    try {
      const document = await this.transport.render_export({
        conversation_ids: conversation ? [conversation.id] : null,
        format,
      });
      const title = conversation ? conversationTitle(conversation) : null;
      downloadText(document, exportFileName(title, format, new Date()), format);
    } catch (error) {
      this.toasts.error(`Cannot export: ${toApiError(error).message}`);
    }
  }

  /** Imports a JSON export file; answers the first imported conversation's id (`null`: none, or it failed). */
  async importFile(file: File): Promise<number | null> {
    try {
      const { conversation_ids } = await this.transport.import_document({ document: await file.text() });
      await this.refresh();
      const count = conversation_ids.length;
      this.toasts.show(`Imported ${count} conversation${count === 1 ? '' : 's'} from ${file.name}`);
      return conversation_ids[0] ?? null;
    } catch (error) {
      this.toasts.error(`Cannot import ${file.name}: ${toApiError(error).message}`);
      return null;
    }
  }

  /** Runs a change that answers with the row, and puts the row in the list; errors become a toast. */
  private async change(run: () => Promise<ConversationInfo>): Promise<ConversationInfo | null> {
    try {
      const changed = await run();
      this.upsert(changed);
      return changed;
    } catch (error) {
      this.toasts.error(toApiError(error).message);
      return null;
    }
  }
}
