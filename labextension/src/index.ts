/**
 * batchmagic in JupyterLab 4 and Notebook 7:
 *
 * - `%%batch` cells in the editor: options styled, the prompt template's fields marked, no
 *   Python highlighting in the prompt (highlight.ts);
 * - the "Batch runs" sidebar: runs and Batch API jobs of a folder's journal (sidebar.ts);
 * - a status bar item: the active kernel's live runs (status.ts).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import {
  EditorExtensionRegistry,
  IEditorExtensionRegistry
} from '@jupyterlab/codemirror';
import { PathExt } from '@jupyterlab/coreutils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { batchCells } from './highlight';
import { BatchRunsPanel } from './sidebar';
import { KernelRunsStatus } from './status';

const OPEN_RUNS = 'batchmagic:open-runs';
// code cells of Python notebooks (text/x-ipython, text/x-python); markdown cells are
// text/x-ipythongfm
const PYTHONISH = /^text\/x-i?python$/;

const ICON = new LabIcon({
  name: 'batchmagic:runs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="4" width="18" height="3" rx="1"/><rect x="3" y="10.5" width="12" height="3" rx="1"/>' +
    '<rect x="3" y="17" width="15" height="3" rx="1"/></g></svg>'
});

const editor: JupyterFrontEndPlugin<void> = {
  id: 'batchmagic:editor',
  description: '%%batch cells: options styled, prompt fields marked, no Python highlighting.',
  autoStart: true,
  requires: [IEditorExtensionRegistry],
  activate: (app: JupyterFrontEnd, registry: IEditorExtensionRegistry) => {
    registry.addExtension({
      name: 'batchmagic:batch-cells',
      factory: ({ model }) => {
        const applies = () => PYTHONISH.test(model.mimeType);
        return EditorExtensionRegistry.createImmutableExtension(batchCells(applies));
      }
    });
  }
};

function notebookFolder(tracker: INotebookTracker): string | null {
  const panel = tracker.currentWidget;
  return panel ? PathExt.dirname(panel.context.path) : null;
}

const sidebar: JupyterFrontEndPlugin<void> = {
  id: 'batchmagic:sidebar',
  description: 'The Batch runs sidebar and the status bar item of live runs.',
  autoStart: true,
  requires: [INotebookTracker],
  // all optional, so it runs in Notebook 7 too (no status bar there)
  optional: [IStatusBar, ICommandPalette, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    fileBrowser: IDefaultFileBrowser | null
  ) => {
    const panel = new BatchRunsPanel({
      currentFolder: () => notebookFolder(tracker) ?? fileBrowser?.model.path ?? null,
      insertCell: source => {
        const current = tracker.currentWidget;
        if (!current) {
          return false;
        }
        const notebook = current.content;
        NotebookActions.insertBelow(notebook);
        notebook.activeCell?.model.sharedModel.setSource(
          source(PathExt.dirname(current.context.path))
        );
        void app.shell.activateById(current.id);
        return true;
      }
    });
    panel.title.icon = ICON;
    panel.folder = notebookFolder(tracker) ?? '';
    app.shell.add(panel, 'left', { rank: 600 });
    tracker.currentChanged.connect(() => panel.followCurrent());
    fileBrowser?.model.pathChanged.connect(() => {
      if (!tracker.currentWidget) {
        panel.followCurrent();
      }
    });

    app.commands.addCommand(OPEN_RUNS, {
      label: 'Show Batch runs',
      caption: 'The runs and Batch API jobs of the journal (batchmagic)',
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    palette?.addItem({ command: OPEN_RUNS, category: 'batchmagic' });

    if (statusBar) {
      const status = new KernelRunsStatus(
        {
          current: () => {
            const current = tracker.currentWidget;
            const kernel = current?.sessionContext.session?.kernel;
            return current && kernel
              ? { kernelId: kernel.id, folder: PathExt.dirname(current.context.path) }
              : null;
          }
        },
        () => void app.commands.execute(OPEN_RUNS)
      );
      statusBar.registerStatusItem('batchmagic:kernel-runs', {
        item: status,
        align: 'left',
        rank: 5,
        isActive: () => status.active,
        activeStateChanged: status.activeChanged
      });
      tracker.currentChanged.connect(() => status.poke());
    }
  }
};

export default [editor, sidebar];
