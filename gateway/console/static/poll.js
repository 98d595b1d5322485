// Refreshing a page: run a task now and again after each run's end, until stopped. A
// failure is shown in the status line and the task goes on (a 401 has signed out already).

import { say } from "./dom.js";

export function repeat(task, everyMs) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    try {
      await task();
    } catch (error) {
      if (!stopped) say(error.message);
    }
    if (!stopped) timer = setTimeout(run, everyMs);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
