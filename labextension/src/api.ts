/**
 * The server extension's REST API (batchmagic/jupyter), under the server's base URL; requests
 * carry Jupyter's own credentials (ServerConnection).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IRun {
  run_id: string;
  started: number | null;
  finished: number | null;
  state: string; // running | done | cancelled | aborted | interrupted
  kind: string | null;
  model: string | null;
  provider: string | null;
  rows: number | null;
  requests: number | null;
  cached: number | null;
  ok: number | null;
  failed: number | null;
  cost: number | null;
  template: string;
  live: boolean;
}

export interface IJob {
  job_id: string;
  created: number | null;
  updated: number | null;
  state: string; // submitting | running | finished
  provider: string | null;
  model: string | null;
  status: string; // the provider's words
  requests: number;
  completed: number;
  failed: number;
  ok: number;
  errors: number;
  pending: number;
  batches: string[];
  live: boolean;
}

export interface IOverview {
  exists: boolean;
  folder: string;
  journal: string;
  runs: IRun[];
  jobs: IJob[];
}

export interface IKernelRuns {
  runs: IRun[];
  rows: number;
  done: number;
}

export interface IJobStatus {
  job_id: string;
  state: string;
  status: string;
  text: string;
}

async function request(
  endpoint: string,
  query: Record<string, string>,
  init: RequestInit = {}
): Promise<Response> {
  const settings = ServerConnection.makeSettings();
  const url =
    URLExt.join(settings.baseUrl, 'batchmagic', 'api', endpoint) +
    URLExt.objectToQueryString(query);
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: the status text says it
    }
    throw new Error(message);
  }
  return response;
}

export async function overview(folder: string): Promise<IOverview> {
  return (await request('runs', { path: folder })).json();
}

export async function kernelRuns(kernelId: string, folder: string): Promise<IKernelRuns> {
  return (await request('kernel', { kernel_id: kernelId, path: folder })).json();
}

export async function jobAction(
  folder: string,
  jobId: string,
  action: 'refresh' | 'cancel'
): Promise<IJobStatus> {
  const path = `jobs/${encodeURIComponent(jobId)}/${action}`;
  return (await request(path, { path: folder }, { method: 'POST' })).json();
}

export async function jobResult(
  folder: string,
  jobId: string,
  format: 'csv' | 'parquet'
): Promise<Blob> {
  const path = `jobs/${encodeURIComponent(jobId)}/result.${format}`;
  return (await request(path, { path: folder })).blob();
}
