-- One HTTP request, sent over and over by every connection of wrk.
--
--   wrk [options] -s bench/wrk_request.lua URL -- METHOD BODY_FILE [Name:value ...]
--
-- METHOD is the request's method; BODY_FILE holds its body, read once before the clock
-- starts ("-" for no body); each Name:value after them is a header. The request is built
-- once per thread (no request() function), so wrk spends no Lua time per request.

function init(args)
  wrk.method = args[1]
  if args[2] ~= "-" then
    local file = assert(io.open(args[2], "rb"))
    wrk.body = file:read("*a")
    file:close()
  end
  for i = 3, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end
