-- Consumer-group fetches, driven by wrk.
--
--   wrk -t N -c N [options] -s bench/wrk_group_fetch.lua BASE_URL -- TOPIC PREFIX \
--       MAX_RECORDS MAX_BYTES [Name:value ...]
--
-- Run with as many threads as connections: a thread is then one member with one connection,
-- whose fetches go one after another. Each member joins a group of its own (PREFIX, its
-- thread and a count) from the start of TOPIC and fetches binary answers with auto_commit;
-- an empty answer means the group has read everything, and the next fetch joins a new group,
-- which reads the topic again. Each Name:value is a header. done() prints the bytes of the
-- answers that held records, and how many held none, as "bench NAME VALUE" lines.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

local function new_group()
  groups = groups + 1
  member = nil
  path = string.format("/v1/topics/%s/groups/%s-%d-%d/fetch", topic, prefix, id, groups)
end

function init(args)
  topic, prefix = args[1], args[2]
  limits = string.format('"max_records":%d,"max_bytes":%d', tonumber(args[3]), tonumber(args[4]))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/vnd.eventbus.batch"
  for i = 5, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
  groups, record_bytes, empty = 0, 0, 0
  new_group()
end

function request()
  local body
  if member then
    body = string.format('{"member_id":"%s",%s}', member, limits)
  else
    body = string.format('{"auto_offset_reset":"earliest",%s}', limits)
  end
  return wrk.format(nil, path, nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    new_group()  -- wrk counts the answer as an error; start over in a group of its own
  elseif #body == 0 then
    empty = empty + 1
    new_group()
  else
    record_bytes = record_bytes + #body
    member = headers["Eventbus-Member-Id"] or headers["eventbus-member-id"]
  end
end

function done(summary, latency, requests)
  local bytes, empties = 0, 0
  for _, thread in ipairs(threads) do
    bytes = bytes + thread:get("record_bytes")
    empties = empties + thread:get("empty")
  end
  io.write(string.format("bench answer_bytes %d\nbench empty_answers %d\n", bytes, empties))
end
