/**
 * The "Batch runs" sidebar: the runs and Batch API jobs of a folder's journal (the active
 * notebook's folder, or one picked), refreshed while any is live. For jobs: ask the provider,
 * cancel, download the result (CSV / Parquet), insert a cell that loads it.
 *
 * Everything comes from the journal through the server extension, so it works across kernel
 * restarts and with no kernel at all.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { Widget } from '@lumino/widgets';

import { IJob, IOverview, IRun, jobAction, jobResult, overview } from './api';

export const LIVE_REFRESH_MS = 2000;
/** One word for a stopped run, whatever stopped it (as the panel under the cell says). */
const STATE_WORDS: Record<string, string> = { aborted: 'stopped' };
export const IDLE_REFRESH_MS = 15000;

/** What the sidebar needs from the application, kept small so Lab and Notebook 7 both fit. */
export interface ISidebarHost {
  /** The folder of the active notebook (or file browser), '' for the root, null if none. */
  currentFolder(): string | null;
  /**
   * Insert a code cell below the active cell of the active notebook, its source made for that
   * notebook's folder; false when no notebook is open.
   */
  insertCell(source: (notebookFolder: string) => string): boolean;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export function when(seconds: number | null): string {
  if (!seconds) {
    return '—';
  }
  const date = new Date(seconds * 1000);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString()
    : `${date.toLocaleDateString()} ${date.toLocaleTimeString()}`;
}

function money(cost: number | null): string {
  return cost === null || cost === undefined ? '—' : `$${cost.toPrecision(3)}`;
}

function count(n: number | null): string {
  return n === null || n === undefined ? '—' : n.toLocaleString();
}

/** `to` relative to `from`, both '/'-separated paths under the server's root. */
export function relativePath(from: string, to: string): string {
  const a = from.split('/').filter(Boolean);
  const b = to.split('/').filter(Boolean);
  let common = 0;
  while (common < a.length && common < b.length && a[common] === b[common]) {
    common += 1;
  }
  const parts = [...a.slice(common).map(() => '..'), ...b.slice(common)];
  return parts.length ? parts.join('/') : '.';
}

/** The cell that loads a job's result frame (it waits for the job if it is still running). */
export function loadJobSource(jobId: string, cache: string): string {
  const name = `job_${jobId.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 12)}`;
  return [
    'import batchmagic as bm',
    '',
    `${name} = bm.job(${JSON.stringify(jobId)}, cache=${JSON.stringify(cache)}).result()`,
    name
  ].join('\n');
}

export class BatchRunsPanel extends Widget {
  private folderInput = el('input', 'batchmagic-folder-input');
  private journalLine = el('div', 'batchmagic-journal');
  private errorLine = el('div', 'batchmagic-error');
  private runsBody = el('tbody');
  private jobsList = el('div', 'batchmagic-jobs');
  private following = true; // the folder follows the active notebook until one is typed
  private timer: number | undefined;
  private view: IOverview | null = null;
  private loading: Promise<void> | null = null;
  // the last answer of each job's action, kept across re-renders of the list
  private messages = new Map<string, string>();

  constructor(private host: ISidebarHost) {
    super();
    this.id = 'batchmagic-runs';
    this.addClass('batchmagic-sidebar');
    this.title.caption = 'Batch runs';
    this.build();
  }

  private build(): void {
    const header = el('div', 'batchmagic-header');
    header.append(el('h2', '', 'Batch runs'));
    const reload = el('button', 'jp-Button batchmagic-reload', 'Refresh');
    reload.title = 'Read the journal again';
    reload.onclick = () => void this.refresh();
    header.append(reload);

    const folder = el('div', 'batchmagic-folder');
    const label = el('label', '', 'Folder');
    this.folderInput.placeholder = '(the server root)';
    this.folderInput.title = "A folder under the server's root: its .batchmagic journal is shown";
    this.folderInput.onchange = () => {
      this.following = false;
      void this.refresh();
    };
    label.append(this.folderInput);
    const follow = el('button', 'jp-Button batchmagic-follow', "Notebook's folder");
    follow.title = "Show the journal of the active notebook's folder";
    follow.onclick = () => {
      this.following = true;
      this.followCurrent();
    };
    folder.append(label, follow);

    const runs = el('table', 'batchmagic-runs');
    const head = el('tr');
    for (const name of ['state', 'rows', 'ok', 'failed', 'cost', 'model', 'started']) {
      head.append(el('th', '', name));
    }
    runs.append(el('thead'), this.runsBody);
    runs.tHead!.append(head);
    // a narrow sidebar scrolls the table sideways rather than squeezing its columns
    const scroller = el('div', 'batchmagic-runs-scroll');
    scroller.append(runs);

    this.node.append(
      header,
      folder,
      this.journalLine,
      this.errorLine,
      el('h3', '', 'Runs'),
      scroller,
      el('h3', '', 'Batch API jobs'),
      this.jobsList
    );
  }

  get folder(): string {
    return this.folderInput.value.trim().replace(/^\/+|\/+$/g, '');
  }

  set folder(value: string) {
    this.folderInput.value = value;
  }

  /** The active notebook changed: follow it unless a folder was picked. */
  followCurrent(): void {
    const current = this.host.currentFolder();
    if (this.following && current !== null && current !== this.folder) {
      this.folder = current;
      void this.refresh();
    } else if (this.following && current !== null) {
      void this.refresh();
    }
  }

  /** Read the journal again (one read at a time), then schedule the next read. */
  refresh(): Promise<void> {
    if (!this.loading) {
      this.loading = this.load().finally(() => {
        this.loading = null;
        this.schedule();
      });
    }
    return this.loading;
  }

  private async load(): Promise<void> {
    const folder = this.folder;
    try {
      const view = await overview(folder);
      if (folder !== this.folder) {
        return; // the folder changed while reading; the next read shows it
      }
      this.view = view;
      this.errorLine.textContent = '';
      this.render(view);
    } catch (error) {
      this.view = null;
      this.errorLine.textContent = `${(error as Error).message}`;
      this.runsBody.replaceChildren();
      this.jobsList.replaceChildren();
      this.journalLine.textContent = '';
    }
  }

  private schedule(): void {
    window.clearTimeout(this.timer);
    if (this.isDisposed) {
      return;
    }
    const live = !!this.view && [...this.view.runs, ...this.view.jobs].some(x => x.live);
    this.node.dataset.live = live ? 'true' : 'false';
    this.timer = window.setTimeout(
      () => {
        if (this.isVisible && document.visibilityState === 'visible') {
          void this.refresh();
        } else {
          this.schedule();
        }
      },
      live ? LIVE_REFRESH_MS : IDLE_REFRESH_MS
    );
  }

  private render(view: IOverview): void {
    this.journalLine.textContent = view.exists
      ? `journal: ${view.journal}/`
      : `no journal in ${view.folder || 'the root'} yet (${view.journal}/)`;
    this.runsBody.replaceChildren(...view.runs.map(run => this.runRow(run)));
    if (!view.runs.length) {
      const empty = el('td', 'batchmagic-empty', 'No runs recorded here.');
      empty.colSpan = 7;
      const row = el('tr');
      row.append(empty);
      this.runsBody.append(row);
    }
    this.jobsList.replaceChildren(...view.jobs.map(job => this.jobItem(job)));
    if (!view.jobs.length) {
      this.jobsList.append(el('div', 'batchmagic-empty', 'No Batch API jobs here.'));
    }
  }

  private runRow(run: IRun): HTMLTableRowElement {
    const row = el('tr', `batchmagic-run batchmagic-state-${run.state}`);
    row.dataset.runId = run.run_id;
    row.title = [
      `run ${run.run_id}`,
      `${run.kind ?? ''} ${run.model ?? ''} @ ${run.provider ?? ''}`,
      `${count(run.requests)} requests, ${count(run.cached)} rows from the journal`,
      run.template ? `prompt: ${run.template}` : ''
    ]
      .filter(Boolean)
      .join('\n');
    const done = (run.ok ?? 0) + (run.failed ?? 0);
    const rows = run.live ? `${count(done)}/${count(run.rows)}` : count(run.rows);
    const cells = [
      STATE_WORDS[run.state] ?? run.state,
      rows,
      count(run.ok),
      count(run.failed),
      money(run.cost),
      run.model ?? '—',
      when(run.started)
    ];
    cells.forEach((text, i) => {
      const cell = el('td', i === 0 ? 'batchmagic-state' : '', text);
      row.append(cell);
    });
    return row;
  }

  private jobItem(job: IJob): HTMLElement {
    const item = el('div', `batchmagic-job batchmagic-state-${job.state}`);
    item.dataset.jobId = job.job_id;
    const head = el('div', 'batchmagic-job-head');
    head.append(
      el('span', 'batchmagic-job-id', job.job_id),
      el('span', 'batchmagic-state', job.state),
      el('span', 'batchmagic-job-status', job.status || 'not created yet')
    );
    const facts = el(
      'div',
      'batchmagic-job-facts',
      `${count(job.completed)}/${count(job.requests)} requests done, ` +
        `${count(job.failed)} failed · ${job.model ?? '—'} @ ${job.provider ?? '—'} · ` +
        `${when(job.created)}`
    );
    if (job.batches.length) {
      facts.title = `provider batches: ${job.batches.join(', ')}`;
    }
    const message = el('div', 'batchmagic-job-message', this.messages.get(job.job_id) ?? '');
    const say = (text: string) => {
      this.messages.set(job.job_id, text);
      message.textContent = text;
    };
    const buttons = el('div', 'batchmagic-job-actions');
    const button = (text: string, title: string, action: () => Promise<void>) => {
      const b = el('button', 'jp-Button', text);
      b.title = title;
      b.onclick = async () => {
        b.disabled = true;
        try {
          await action();
        } catch (error) {
          say(`${text}: ${(error as Error).message}`);
        } finally {
          b.disabled = false;
        }
      };
      buttons.append(b);
      return b;
    };
    const folder = this.folder;
    button('Refresh status', 'Ask the provider how the job stands', async () => {
      const status = await jobAction(folder, job.job_id, 'refresh');
      say(status.text);
      await this.refresh();
    });
    const cancel = button('Cancel', 'Stop the job at the provider (finished rows are kept)', () =>
      this.cancel(folder, job, say)
    );
    cancel.disabled = !job.live;
    for (const format of ['csv', 'parquet'] as const) {
      button(format === 'csv' ? 'CSV' : 'Parquet', `Download the job's result frame as ${format}`, async () => {
        const blob = await jobResult(folder, job.job_id, format);
        const link = el('a');
        link.href = URL.createObjectURL(blob);
        link.download = `job-${job.job_id}.${format}`;
        document.body.append(link);
        link.click();
        link.remove();
        window.setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      });
    }
    button('Insert cell', "Insert a cell that loads the job's result", async () => {
      this.insertCell(folder, job);
    });
    item.append(head, facts, buttons, message);
    return item;
  }

  private async cancel(folder: string, job: IJob, say: (text: string) => void): Promise<void> {
    const answer = await showDialog({
      title: 'Cancel the Batch API job?',
      body: `Job ${job.job_id} at ${job.provider ?? 'the provider'} stops; rows it finished are kept.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep it running' }),
        Dialog.warnButton({ label: 'Cancel job' })
      ]
    });
    if (!answer.button.accept) {
      return;
    }
    const status = await jobAction(folder, job.job_id, 'cancel');
    say(status.text);
    await this.refresh();
  }

  private insertCell(folder: string, job: IJob): void {
    const journal = this.view?.journal ?? PathExt.join(folder, '.batchmagic');
    const inserted = this.host.insertCell(notebookFolder =>
      loadJobSource(job.job_id, relativePath(notebookFolder, journal))
    );
    if (!inserted) {
      void showErrorMessage('No notebook', 'Open a notebook to insert the cell into.');
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }
}
