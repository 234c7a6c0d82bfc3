/**
 * The status bar item: the runs of the active notebook's kernel still running, with their
 * overall progress (rows done of rows), read from the journal of the notebook's folder.
 */
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IKernelRuns, kernelRuns } from './api';

export const STATUS_LIVE_MS = 1500;
export const STATUS_IDLE_MS = 5000;

/** The active notebook as the status item sees it: its kernel and its folder. */
export interface IKernelSource {
  current(): { kernelId: string; folder: string } | null;
}

export class KernelRunsStatus extends Widget {
  private label = document.createElement('span');
  private bar = document.createElement('span');
  private fill = document.createElement('span');
  private timer: number | undefined;
  private runs: IKernelRuns | null = null;
  private changed = new Signal<this, void>(this);

  constructor(
    private source: IKernelSource,
    onClick: () => void
  ) {
    super();
    this.addClass('batchmagic-status');
    this.bar.className = 'batchmagic-status-bar';
    this.fill.className = 'batchmagic-status-fill';
    this.bar.append(this.fill);
    this.node.append(this.label, this.bar);
    this.node.title = 'batchmagic runs of this kernel (click: Batch runs)';
    this.node.onclick = onClick;
    void this.poll();
  }

  /** Whether there is something to show (the status bar hides the item otherwise). */
  get active(): boolean {
    return !!this.runs && this.runs.runs.length > 0;
  }

  get activeChanged(): ISignal<this, void> {
    return this.changed;
  }

  /** The active notebook (or its kernel) changed: look at once. */
  poke(): void {
    void this.poll();
  }

  private async poll(): Promise<void> {
    window.clearTimeout(this.timer);
    const wasActive = this.active;
    const current = this.source.current();
    if (current && document.visibilityState === 'visible') {
      try {
        this.runs = await kernelRuns(current.kernelId, current.folder);
      } catch {
        this.runs = null; // no journal, a kernel starting: nothing to show
      }
    } else if (!current) {
      this.runs = null;
    }
    this.render();
    if (wasActive !== this.active) {
      this.changed.emit();
    }
    if (!this.isDisposed) {
      this.timer = window.setTimeout(
        () => void this.poll(),
        this.active ? STATUS_LIVE_MS : STATUS_IDLE_MS
      );
    }
  }

  private render(): void {
    if (!this.runs || !this.runs.runs.length) {
      this.label.textContent = '';
      this.fill.style.width = '0%';
      return;
    }
    const { runs, rows, done } = this.runs;
    const share = rows ? Math.min(100, Math.floor((100 * done) / rows)) : 0;
    const n = runs.length;
    this.label.textContent =
      `batchmagic: ${n} run${n === 1 ? '' : 's'} · ` +
      `${done.toLocaleString()}/${rows.toLocaleString()} rows (${share}%)`;
    this.fill.style.width = `${share}%`;
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }
}
