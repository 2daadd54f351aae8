# Records every AdmissionReview an API server sends and answers "allowed".
# Usage: python3 record_reviews.py PORT OUTDIR (TLS: pki/tls.crt, pki/tls.key in the working directory).
import http.server, ssl, json, sys, os, itertools
out = sys.argv[2]; os.makedirs(out, exist_ok=True)
n = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        review = json.loads(body)
        i = next(n)
        with open(os.path.join(out, f"{i:02d}.json"), "wb") as f: f.write(body)
        req = review["request"]
        print(i, req["operation"], req["name"], flush=True)
        answer = {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": {"uid": req["uid"], "allowed": True}}
        data = json.dumps(answer).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("pki/tls.crt", "pki/tls.key")
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H); srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
